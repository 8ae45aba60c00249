"""Study 2: head utilization of trained transformers on in-context sparse linear regression (``run.main``)."""
