"""Pieces of JupyterHub configuration, for hub config files to import:
the lab manager as a service (``add_lab_manager``) and the nbgrader course
(``configure_course``, ``course_settings``). hub-config/local_config.py (the
demo) uses both; each works on the ``c`` a config file has."""

from .course import configure_course, course_settings
from .labmanager import add_lab_manager

__all__ = ["add_lab_manager", "configure_course", "course_settings"]
