"""A target's worker pool, one module per responsibility.

:mod:`.schedule` (what is queued, waiting or in flight, and when), :mod:`.intake`
(ready files into the journal and the schedule), :mod:`.execution` (one delivery),
:mod:`.outcomes` (filing what happened: archive, retry, park) and :mod:`.workers`
(the workers that tie them together).
"""
