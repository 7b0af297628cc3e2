-- Fluent Bit Lua filter: gives every record the fields Loki indexes as labels
-- (source, app, component, node), whatever input it came from, so the Grafana dashboard
-- can select logs by application and component. Each label takes few values: a value that
-- changes per login, per pod IP or per message would make a Loki stream of its own.
--
--   container logs  app/component from the pod labels clusterous.io/app and
--                   clusterous.io/component (the operator sets them); other pods fall back
--                   to app.kubernetes.io/name|component, then the pod and container names;
--                   node = the node the collector runs on
--   syslog (5514)   app = the sending program (syslog tag), component = "syslog",
--                   node = the sender's host from the message, else the sender's address
--   journald        app = "system", component = the systemd unit, with per-session and
--                   per-instance units folded (session-12.scope -> its program, user@1000.service
--                   -> user@.service); node = the collector's node

local node = os.getenv("NODE_NAME") or "unknown"

local SEVERITIES = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" }

-- The first argument that is a non-empty string other than syslog's nil value "-".
local function first(...)
  for i = 1, select("#", ...) do
    local value = select(i, ...)
    if type(value) == "string" and value ~= "" and value ~= "-" then
      return value
    end
  end
  return "unknown"
end

-- "udp://10.42.1.7:40312" (the syslog input's source_address_key) -> "10.42.1.7".
local function sender_address(address)
  if type(address) ~= "string" then
    return nil
  end
  return address:match("^%a+://(.*):%d+$") or address
end

local function journal_component(record)
  local unit = record["SYSTEMD_UNIT"]
  if type(unit) ~= "string" or unit == "" then
    return first(record["SYSLOG_IDENTIFIER"], "kernel")
  end
  if unit:sub(-6) == ".scope" then -- session-12.scope, run-r3f2.scope: one per login or run
    return first(record["SYSLOG_IDENTIFIER"], "scope")
  end
  local template, suffix = unit:match("^([^@]+)@[^.]*(%.%a+)$")
  if template then -- user@1000.service, getty@tty1.service: one per instance
    return template .. "@" .. suffix
  end
  return unit
end

function clusterous_labels(tag, timestamp, record)
  if string.sub(tag, 1, 5) == "kube." then
    local k8s = record["kubernetes"] or {}
    local labels = k8s["labels"] or {}
    record["source"] = "container"
    record["node"] = node
    record["app"] = first(labels["clusterous.io/app"], labels["app.kubernetes.io/name"],
      labels["app"], k8s["pod_name"])
    record["component"] = first(labels["clusterous.io/component"],
      labels["app.kubernetes.io/component"], k8s["container_name"])
  elseif string.sub(tag, 1, 7) == "syslog." then
    record["source"] = "syslog"
    record["node"] = first(record["host"], sender_address(record["source_address"]))
    record["app"] = first(record["ident"], "syslog")
    record["component"] = "syslog"
    local pri = tonumber(record["pri"])
    if pri then
      record["severity"] = SEVERITIES[pri % 8 + 1]
      record["facility"] = math.floor(pri / 8)
    end
  else
    record["source"] = "journal"
    record["node"] = node
    record["app"] = "system"
    record["component"] = journal_component(record)
  end
  -- 2: the record was modified, its timestamp kept.
  return 2, timestamp, record
end
