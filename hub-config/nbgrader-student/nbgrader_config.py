"""nbgrader's student-side config (Assignments tab, `nbgrader fetch/submit`).

Student servers find it through JUPYTER_CONFIG_PATH, which
hub-config/nbgrader_course.py sets; the values come from the same environment.
"""

import os

c = get_config()  # noqa: F821 (provided by nbgrader)
c.CourseDirectory.course_id = os.environ.get("KVS_COURSE_ID", "os-lab")
c.Exchange.root = os.environ.get("KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange")
