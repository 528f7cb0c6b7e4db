"""The code of every logged msaflow model (MLflow "models from code"): MLflow copies this file into
the logged model and runs it to get the model, so no Python object is pickled. The model itself,
and what it loads, is ``tasks.serving``."""

from mlflow.models import set_model

from msaflow.tasks.serving import MSAFlowModel

set_model(MSAFlowModel())
