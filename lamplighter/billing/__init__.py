"""Paid plans: subscriptions as a state machine (subscriptions.py), the service that applies
them and gives people their plans (service.py), payment providers (providers.py, stripe.py), and
usage statements (statements.py)."""
