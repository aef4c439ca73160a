"""The whole CFFL study on one machine (simulation protocols): a typed context, one module per
stage (features, clustering, training, evaluation, report), the resumable runner and the CFFL
phases. The only package (with the CLI) that composes the site and server roles."""
