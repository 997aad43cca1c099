"""The file names and other strings that more than one module (or a user's script) relies on, in one place.

A leaf module: it imports nothing, so models, pipeline modules, verbs and tests can all read it. A name here is
part of the on-disk contract (DESIGN.md): changing one breaks folders written before.
"""

# Student folder (`students.BiEncoder.save_pretrained`, `distill export`)
STUDENT_CONFIG = "distill_student.json"  # pooling, normalize, max_seq_length, prefixes, head options
DSE_HEAD = "dse_head.safetensors"  # the DSE pair head's weights, when the student has one
DSE_HEAD_CONFIG = "dse_head.json"
DSE_HEAD_LOADER = "dse_head.py"  # the torch-only loader shipped beside the head
EXPORT_REPORT = "export_report.json"  # written last by `distill export`: parity figures
MODEL_CARD = "README.md"
ONNX_FILE = "onnx/model.onnx"  # where sentence-transformers' ONNX backend looks
INT8_FILE = "onnx/model_qint8.onnx"

# Backbones (`distill prepare`)
BACKBONE_MARKER = "distill_backbone.json"  # written last: a prepared backbone folder that has it is complete

# Score cache (`distill cache`)
MANIFEST = "manifest.json"

# Training runs (Lightning's ModelCheckpoint names)
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"

# Reports of verbs and recipes
REPORT_JSON = "report.json"  # machine-readable
REPORT_MD = "report.md"  # the same figures for people
TRIM_REPORT = "trim_report.json"
PARETO_PNG = "pareto.png"

# Scoring modes of a student / teacher, as logged (`{split}/spearman_{mode}`) and in the bench report's `mode`
COSINE = "cosine"
DSE = "dse"
CROSS_ENCODER = "cross-encoder"

# The quickstart's configs, relative to configs/ (the must-not-change public recipes)
TEACHER_QUICKSTART = "teacher/quickstart.yaml"
STUDENT_QUICKSTART = "student/quickstart.yaml"
CACHE_QUICKSTART = "cache/quickstart.yaml"
BENCH_QUICKSTART = "bench/quickstart.yaml"
