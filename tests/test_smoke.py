import json

from brokers.models import Execution, Position


def test_unify_alert_becomes_a_filled_paper_position(client, paper, django_capture_on_commit_callbacks):
    account, key = paper
    body = {"version": "unify.v1", "intent": {"side": "buy", "symbol": "BTCUSDT", "qty": "0.5", "price": "50000"}}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/webhooks/{key}", data=json.dumps(body), content_type="text/plain")
    assert response.status_code == 202, response.content
    execution = Execution.objects.get(signal_id=response.json()["signal_id"])
    assert execution.status == Execution.Status.FILLED
    position = Position.objects.get(account=account, symbol="BTCUSDT", status="open")
    assert (position.side, position.qty, position.avg_price) == ("long", 0.5, 50000)
