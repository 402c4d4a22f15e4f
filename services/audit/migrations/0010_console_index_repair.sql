-- The indexer checks the auditor's list against the ledger it is derived from and puts
-- back what differs (services/audit/ui_index.py `repair_once`, review D5): a row edited
-- or invented behind it is deleted and, when an incident's entries fold to it, written
-- again. console_incidents is derived data, never evidence: deleting its rows loses
-- nothing the ledger does not hold.
GRANT DELETE ON console_incidents TO incidents_audit;
