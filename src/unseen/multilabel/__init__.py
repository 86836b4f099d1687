"""Multi-label zero-shot learning (NUS-WIDE, Open Images): readers and metrics so far; Epsilon to come."""
