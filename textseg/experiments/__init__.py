"""Experiments that measure the library, apart from it (the library never imports them): the cross-patient table
(:mod:`.cross_patient`), the fusion ablation (:mod:`.ablation`), the rotation and click benchmarks
(:mod:`.rotation_benchmark`, :mod:`.click_benchmark`) and the active-learning simulation
(:mod:`.active_learning_simulation`). ``scripts/`` holds their entry points."""
