"""Learning rules: classic rules as ODEs (:mod:`.classic`) and fast weight rules (:mod:`.fast_weight`)."""
