"""What a run leaves behind: the event log and summary (:mod:`fif.results.events`), optional sinks
(TensorBoard, W&B: :mod:`fif.results.sinks`) and every plot and the HTML report (:mod:`fif.results.report`)."""
