"""Learning rules: classic rules as ODEs (:mod:`.classic`), the fast weight rules
(:mod:`.fast_weight`), one record per rule (:mod:`.record`) and registering your own
(:mod:`.registry`)."""

from .fast_weight import RULES, get_rule
from .record import ACTIVATIONS, CORRECTIONS, STRUCTURES, FastWeightRule, activate
from .registry import (
    load_rules_from,
    on_registry_change,
    register_rule,
    rule_fingerprint,
    unregister_rule,
)

__all__ = [
    "ACTIVATIONS",
    "CORRECTIONS",
    "RULES",
    "STRUCTURES",
    "FastWeightRule",
    "activate",
    "get_rule",
    "load_rules_from",
    "on_registry_change",
    "register_rule",
    "rule_fingerprint",
    "unregister_rule",
]
