"""The nbgrader lab course, for a hub config that loads this file with
``load_subconfig("/path/to/hub-config/nbgrader_course.py")``: the course made
from this repository's notebooks/ (kubevirt_spawner.hubconfig.course says
what it sets up and which KVS_COURSE_* variables change it)."""

import sys
from pathlib import Path

from kubevirt_spawner.envsettings import EnvError
from kubevirt_spawner.hubconfig import configure_course

try:
    configure_course(get_config(), notebooks=Path(__file__).resolve().parent.parent / "notebooks")  # noqa: F821
except EnvError as e:
    sys.exit(f"course: {e}")
