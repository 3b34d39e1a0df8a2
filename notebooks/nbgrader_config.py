"""nbgrader configuration of the lab course (this directory is the course root).

Instructors run nbgrader from here (or from a copy of it); see docs/course.md,
"Lab course and grading". Environment overrides, for a hub or for tests:
KVS_COURSE_ID, KVS_NBGRADER_EXCHANGE, KVS_COURSE_ROOT.
"""

import os
from pathlib import Path

from kubevirt_spawner.nbgrader_stubs import configure

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = os.environ.get("KVS_COURSE_ID", "os-lab")
c.CourseDirectory.root = os.environ.get("KVS_COURSE_ROOT", str(Path(__file__).resolve().parent))
c.Exchange.root = os.environ.get("KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange")

# C, shell and Makefile solution cells get stubs in their own language.
configure(c)

# Kernel builds (labs 4 and 8) and VM reboots take minutes, not nbgrader's 30 s.
c.Execute.timeout = 900
# A failing check is a lost point, not a reason to stop grading the notebook.
c.Execute.allow_errors = True
