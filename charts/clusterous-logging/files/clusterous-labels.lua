-- Fluent Bit Lua filter: gives every record the fields Loki indexes as labels
-- (source, app, component, node), whatever input it came from, so the Grafana dashboard
-- can select logs by application and component.
--
--   container logs  app/component from the pod labels clusterous.io/app and
--                   clusterous.io/component (the operator sets them); other pods fall back
--                   to app.kubernetes.io/name|component, then the pod and container names
--   syslog (5514)   app = the sending program (syslog tag), component = "syslog"
--   journald        app = "system", component = the systemd unit (or the syslog identifier)

local node = os.getenv("NODE_NAME") or "unknown"

local function first(...)
  for i = 1, select("#", ...) do
    local value = select(i, ...)
    if type(value) == "string" and value ~= "" then
      return value
    end
  end
  return "unknown"
end

function clusterous_labels(tag, timestamp, record)
  record["node"] = node
  if string.sub(tag, 1, 5) == "kube." then
    local k8s = record["kubernetes"] or {}
    local labels = k8s["labels"] or {}
    record["source"] = "container"
    record["app"] = first(labels["clusterous.io/app"], labels["app.kubernetes.io/name"],
      labels["app"], k8s["pod_name"])
    record["component"] = first(labels["clusterous.io/component"],
      labels["app.kubernetes.io/component"], k8s["container_name"])
  elseif string.sub(tag, 1, 7) == "syslog." then
    record["source"] = "syslog"
    record["app"] = first(record["ident"], record["appname"], "syslog")
    record["component"] = "syslog"
  else
    record["source"] = "journal"
    record["app"] = "system"
    record["component"] = first(record["SYSTEMD_UNIT"], record["SYSLOG_IDENTIFIER"], "kernel")
  end
  -- 2: the record was modified, its timestamp kept.
  return 2, timestamp, record
end
