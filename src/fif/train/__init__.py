"""Training: one task's flat update loop (:mod:`fif.train.loop`), learning-rate schedules as pure
functions (:mod:`fif.train.schedules`), data parallelism (:mod:`fif.train.distributed`) and building the
mini base model (:mod:`fif.train.pretrain`)."""
