"""The pipeline's machinery, below the method: what turns a profile into runs, results and reports.

The method (models, losses, tasks, data, engine, checkpoints, evaluation, figures) sits at the top of
``g2sd_lib`` and never imports from here. Here, in the order a run goes through them:
:mod:`.profiles` (the presets and ``params.yaml``), :mod:`.schema` (their validation), :mod:`.config`
(a stage's configuration from a profile), :mod:`.teacher`, :mod:`.stages` and :mod:`.dense_stages`
(the stages' runs), :mod:`.repro` (``dvc repro`` with stages at once), :mod:`.download` (the official
checkpoints), :mod:`.results`, :mod:`.report` and :mod:`.compare` (summaries, tables, the profiles side
by side).
"""
