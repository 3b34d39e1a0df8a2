"""The lab manager: a JupyterHub service for running a course.

Instructors' dashboard, students' VM API, live lab progress, reaper and abuse
monitor; see ``app`` for its settings and ``python -m kubevirt_spawner.manager --help``.
"""
