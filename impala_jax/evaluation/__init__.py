"""Evaluation of trained runs: load a checkpoint, play whole games, record a video, aggregate.

    policy.py     a run's config and checkpoint → the network and parameters training used
    episodes.py   whole games with the evaluation settings (no life loss, unclipped, no-ops)
    video.py      mp4 (H.264) or gif of one game, a PNG frame
    aggregate.py  median / IQM / mean over games with stratified-bootstrap intervals (rliable)

`experiments/evaluate.py` runs the first three from the command line,
`experiments/plot_metrics.py` the last.
"""
