"""Pages of the panel itself: the audit log, the Users page, and the account pages
(login, sudo confirmation, password reset)."""
