"""nbgrader's student-side config (Assignment List, `nbgrader fetch/submit`).

Student servers find it through JUPYTER_CONFIG_PATH, which
LocalVMSpawner sets; the values come from the environment the course's hub
config (kubevirt_spawner.hubconfig.course) gives them.
"""

import os

c = get_config()  # noqa: F821 (provided by nbgrader)
c.CourseDirectory.course_id = os.environ.get("KVS_COURSE_ID", "os-lab")
c.Exchange.root = os.environ.get("KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange")
