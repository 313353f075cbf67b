"""Drop-in replacements for the task registries of other applications.

Each submodule mirrors one application's API on top of `taskward.TaskManager`,
so that application switches by changing an import:

- `taskward.compat.openwebui`: open-webui's ``backend/open_webui/tasks.py``.
"""
