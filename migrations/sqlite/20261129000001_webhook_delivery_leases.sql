-- Deliveries being sent right now (a live lease), per receiver: the webhook loop counts them on
-- every claim so that one slow receiver cannot take every sending slot. Rows carry a lease only
-- while an attempt is in flight, so this index stays small.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (url, lease_until) WHERE lease_owner IS NOT NULL;
