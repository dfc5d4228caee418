from tests import models


def test_upload_then_predict_identity(client, upload_model):
    upload_model(models.identity(), "ident")
    response = client.post("/predict", json={"model_id": "ident", "features": [1, 2, 3, 4]})
    assert response.status_code == 200
    assert response.get_json()["outputs"] == {"Y": [[1.0, 2.0, 3.0, 4.0]]}
