"""What a hospital runs: protect and seal its feature release (:mod:`.release`), open the server's
sealed cluster model and assign its own cases (:mod:`.assign`). Only sealed envelopes leave."""
