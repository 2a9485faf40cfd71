"""Optional integrations with other libraries; each imports its library only when used.

* :mod:`repact.integrations.ultralytics`: swap the activations of an Ultralytics YOLO model,
  re-parameterize, verify and export it (needs ``pip install ultralytics``, AGPL-3.0).
"""
