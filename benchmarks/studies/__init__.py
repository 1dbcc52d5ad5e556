"""One-off studies: each measured once for a question whose answer lives in docs/ (the command and the
machine are there). Kept to be rerun by hand; not maintained by the tests, except where a test says so."""
