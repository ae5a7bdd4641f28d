"""Scenarios: how forget requests reach a method (DESIGN.md, "Scenarios"). `conf/scenario/` names one."""
