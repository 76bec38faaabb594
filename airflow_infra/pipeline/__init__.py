"""The call pipeline: what happens to one call of an infra task, in order.

    declaration  declared fields out of operator arguments; parse-time checks
    plan         declaration -> rendered resources -> route -> environment hash / image reference
    arguments    Airflow's values -> the function's plain arguments
    package      code + arguments -> call.pkl and call.json in the call's folder
    cache        reuse an earlier outcome when code, inputs and environment match
    execute      drive the target's runner: prepare, submit, wait/resume, collect, explain, kill
    decode       outcome.json -> the task's return value (or its failure)

InfraOperator adapts Airflow to these; `airflow-infra plan/build` and the UI plugin use the
same planner. Nothing here imports the operator.
"""
