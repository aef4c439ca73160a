"""The federated layer: composes the site, server and auditor roles (release, collection,
secure clustering, Flower training, the study orchestrator)."""
