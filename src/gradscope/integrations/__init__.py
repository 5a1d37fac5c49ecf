"""Record a run trained by a framework's trainer: thin callbacks over `gradscope.recorder.Recorder`.

    from gradscope.integrations.lightning import GradscopeCallback            # pip install 'gradscope[lightning]'
    from gradscope.integrations.huggingface import GradscopeTrainerCallback   # pip install 'gradscope[huggingface]'

Each takes the Recorder's keyword arguments except model and optimizer, which it takes from the
trainer when training starts, and calls the recorder at the trainer's optimizer steps. Each
module imports its framework, so import only the one you use; this package imports neither.
`gradscope doctor` says which frameworks are installed, and the command that adds a missing one.
"""
