"""Span attribute names: genopt's own, Prefect's, and the GenAI conventions.

genopt stamps its attributes on Prefect's own flow-run and task-run spans, and
creates two kinds of spans of its own: ``genopt.run.start`` (one per pipeline
run, exported as soon as the run starts so a killed run still leaves a record)
and ``gen_ai`` LLM-call spans.
"""

from __future__ import annotations

#: the OpenTelemetry tracer (instrumentation scope) of genopt's own spans
TRACER_NAME = "prefect_genopt"
#: a span reporting spans a process could not export (its count in :data:`DROPPED`)
DROPS_SPAN = "genopt.drops"
DROPPED = "genopt.dropped"

# genopt's attributes
PIPELINE = "genopt.pipeline"
RUN_ID = "genopt.run_id"
PARAM_SET_ID = "genopt.param_set_id"
ARM = "genopt.arm"
ITEM_KEY = "genopt.item_key"
INPUTS = "genopt.inputs"
OUTPUT = "genopt.output"
PARAMS_READ = "genopt.params_read"
ERROR = "genopt.error"
TASK_NAME = "genopt.task"
ROUTING_ERROR = "genopt.routing_error"
#: genopt's own failures counted in a run, by cause (JSON), on its run-end span
GENOPT_ERRORS = "genopt.errors"
#: where a run's routing came from: api, cache, process, state-file or defaults
ROUTING_SOURCE = "genopt.routing_source"
#: a task's docstring (first paragraph): the optimizer's #Code/#Documentation
DOC = "genopt.doc"
#: verified replay: "replayed", "computed", or "computed: <why no experience was valid>"
REPLAY = "genopt.replay"
REPLAY_EXPERIENCE = "genopt.replay.experience_id"
#: why a recording step's full values were not kept (too big)
RECORD_REFUSED = "genopt.record.refused"

# attributes of the run-start span
RUN_START_SPAN = "genopt.run.start"
#: one per attempt of a pipeline run, with its outcome (a retried run has several)
RUN_END_SPAN = "genopt.run.end"
STATUS = "genopt.status"
PARAMS = "genopt.params"
SCHEMA = "genopt.schema"
SCHEMA_HASH = "genopt.schema_hash"
ENTRYPOINT = "genopt.entrypoint"
FLOW_NAME = "genopt.flow_name"
HOST = "genopt.host"
PID = "genopt.pid"

#: Attributes stored whole: never truncated nor redacted (param-set content and
#: schemas must round-trip exactly; their ids are hashes of them).
VERBATIM = frozenset({PARAMS, SCHEMA})

# Prefect's attributes (prefect/telemetry/run_telemetry.py)
PREFECT_RUN_ID = "prefect.run.id"
PREFECT_RUN_TYPE = "prefect.run.type"
PREFECT_RUN_NAME = "prefect.run.name"

# GenAI semantic conventions: the new name first, then older aliases.
GENAI_MODEL = ("gen_ai.request.model", "gen_ai.response.model", "llm.request.model")
GENAI_PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.provider")
GENAI_INPUT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.usage.prompt_tokens",
)
GENAI_OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
)
GENAI_COST = ("gen_ai.usage.cost", "llm.usage.cost", "gen_ai.usage.cost_usd")
GENAI_OPERATION = "gen_ai.operation.name"
GENAI_PROMPT = "gen_ai.prompt"
GENAI_COMPLETION = "gen_ai.completion"
