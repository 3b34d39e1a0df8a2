"""The lab manager service, for hub configs (and tests) that load this file
by path: ``add_lab_manager`` is kubevirt_spawner.hubconfig.add_lab_manager;
new configs import it from there."""

from kubevirt_spawner.hubconfig import add_lab_manager

__all__ = ["add_lab_manager"]
