"""The names of the ONNX export forms, in a module without imports: the one list that
:mod:`repact.deploy.onnx_forms` checks a form against and that ``repact deploy`` and ``repact bench``
offer as ``--onnx-form`` choices at parse time (importing :mod:`repact.deploy` there would pull in
torchvision)."""

#: ``auto``: the fastest exact form per activation for onnxruntime before per-runtime targets (the
#: ``generic`` target); ``conv``: onnxruntime's fused-convolution form where the table allows
#: (:mod:`repact.deploy.runtime_forms`), else ``auto``'s; ``basis``: the plain basis formula where the
#: table allows; ``clamp``: the same function with less arithmetic
#: (:class:`~repact.deploy.onnx_forms.ClampAbsBasis`) where the table allows; ``where``: the op's own
#: where-chain
ONNX_FORMS = ("auto", "conv", "basis", "clamp", "where")
