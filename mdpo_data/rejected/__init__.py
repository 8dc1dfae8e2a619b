"""Rejected-image strategies (m_l): the registry and each strategy."""
