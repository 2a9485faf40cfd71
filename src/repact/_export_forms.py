"""The names of the ONNX export forms and of the deploy targets, in a module without imports: the
lists that :mod:`repact.deploy.onnx_forms` and :mod:`repact.deploy.runtime_forms` check against and
that ``repact deploy`` and ``repact bench`` offer as ``--onnx-form`` and ``--target`` choices at
parse time (importing :mod:`repact.deploy` there would pull in torchvision)."""

#: ``auto``: the fastest exact form per activation for onnxruntime before per-runtime targets (the
#: ``generic`` target); ``conv``: onnxruntime's fused-convolution form where the table allows
#: (:mod:`repact.deploy.runtime_forms`), else ``auto``'s; ``basis``: the plain basis formula where the
#: table allows; ``clamp``: the same function with less arithmetic
#: (:class:`~repact.deploy.onnx_forms.ClampAbsBasis`) where the table allows; ``where``: the op's own
#: where-chain
ONNX_FORMS = ("auto", "conv", "basis", "clamp", "where")

#: what ``repact deploy --target`` accepts
TARGETS = ("generic", "onnxruntime", "openvino", "tensorrt", "executorch")
#: the ``export_onnx`` form each target uses (executorch: the form its ``.pte`` file is exported in)
TARGET_FORMS = {"generic": "auto", "onnxruntime": "conv", "openvino": "clamp", "tensorrt": "basis",
                "executorch": "basis"}
