"""The four-step backup wizard (django-formtools): 1 General, 2 Content, 3 Destination,
4 Summary, used to create a job, to edit one (the same steps, prefilled) and to
duplicate one.

* :mod:`jobs.wizard.storage`: formtools' session storage, one per browser tab (a random
  wizard id carried in the form, the TODO in formtools' ``get_prefix``), with every
  secret encrypted before it reaches the session, an expiry, and the clean-up of
  abandoned wizards.
* :mod:`jobs.wizard.forms`: one form per step; each validates its own step (also when
  formtools validates every step again on Finish).
* :mod:`jobs.wizard.finish`: what Finish does with the validated steps: save the job
  (through :mod:`backupsite.configwrite`), run it, or run once without saving a job.
* ``jobs/views/wizard.py``: the view (thin: the steps' extra buttons and the choice of
  forms and templates).
"""
