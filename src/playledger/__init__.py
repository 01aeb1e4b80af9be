"""playledger: the audit trail for Ansible that never loses an event."""

__version__ = "0.1.0"
