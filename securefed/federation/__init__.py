"""The only importer of Flower: the ClientApp (sites) and ServerApp (one federated phase), their
run and node configuration, the site task, and the simulation and deployment engines."""
