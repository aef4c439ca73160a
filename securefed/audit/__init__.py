"""Privacy audits: what an auditor runs (securefed audit ...)."""
