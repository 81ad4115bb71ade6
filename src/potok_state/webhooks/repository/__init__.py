"""SQL for webhooks (docs/data-model.md), one module per concern:

* `rows`: the subscription and delivery rows as the code reads them, and the
  statuses a delivery goes through;
* `subscriptions`: creating, changing and deleting subscriptions, their sealed
  secrets and their rotation;
* `dispatch`: outbox events turned into deliveries, once each;
* `claims`: leasing due deliveries to a worker, fairly and in order;
* `attempts`: recording finished attempts in batches;
* `rounds`: the worker's one transaction a round (record, give back, claim);
* `health`: what a failed attempt does to its subscription (webhooks/policy.py
  applied: the circuit breaker and the disable policy);
* `delivery_log`: the delivery log as the API shows it, and sending from it
  again (retry, replay, what a disabled subscription missed).
"""
