//! Keeps an external Mosquitto 2 broker's dynamic-security plugin in step with jiandu's
//! accounts (DESIGN §3 "External brokers"), so Mosquitto itself refuses a wrong password, a
//! revoked phone, and a phone publishing outside its own subtree.
//!
//! jiandu speaks the plugin's control API (`$CONTROL/dynamic-security/v1`, answers on
//! `…/v1/response`) as the broker's dynsec admin. Every device gets a client (username = device
//! id, password = its token) with a role `jd-dev-{id}` holding the device topics of the wire
//! contract literally (Mosquitto 2.0's dynsec has no `%u` substitution); every integration a
//! client with role `jd-int-{name}` (its filters, its own `$share/{name}/…` group, never device
//! topics); the service account the roles use a client with role `jd-svc-{name}` (everything).
//! The default access is set to deny publishing and subscribing. A revoked device or account is
//! deleted (Mosquitto disconnects its sessions at once).
//!
//! The plugin needs the plaintext password at `createClient` (it keeps its own PBKDF2-SHA512
//! hash; 2.0 has no pre-hashed form), and the database keeps only SHA-256 of tokens. So tokens
//! of syncable logins are derived from the broker credential key
//! ([`jiandu_store::CredentialKey`]): the sync derives each token again and checks it against
//! the stored hash; a login whose token was made before the key (random) cannot be given to
//! Mosquitto and is reported (re-register the phone).

use std::collections::HashSet;
use std::time::Duration;

use jiandu_store::{CredentialKey, MqttLogin, Principal, Store, hash_token};
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::BrokerError;

/// The plugin's command topic.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// Commands per control message.
const BATCH: usize = 100;
/// How long the plugin has to answer one control message.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the Mosquitto broker is and who may administer its dynamic security.
#[derive(Clone)]
pub struct DynsecConfig {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// A dynsec client with the plugin's `admin` role (`mosquitto_ctrl dynsec init FILE USER`).
    pub admin_username: String,
    /// Its password.
    pub admin_password: String,
    /// The service account the roles log in with, and its password, made a Mosquitto client.
    pub service: Option<(String, String)>,
    /// How often `serve` looks for new and revoked logins.
    pub interval: Duration,
}

impl std::fmt::Debug for DynsecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynsecConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin_username", &self.admin_username)
            .field("service", &self.service.as_ref().map(|(u, _)| u))
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What one pass of the sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Clients created (device ids and account names).
    pub created: Vec<String>,
    /// Clients deleted because they were revoked.
    pub deleted: Vec<String>,
    /// Logins whose token was not derived from the credential key: Mosquitto cannot be told it.
    pub not_derivable: Vec<String>,
    /// Clients already in step.
    pub unchanged: usize,
}

/// A connection to the plugin's control API.
pub struct Dynsec {
    client: AsyncClient,
    answers: mpsc::Receiver<Value>,
    stop: CancellationToken,
    next: u64,
}

impl Dynsec {
    /// Connects as the dynsec admin and subscribes to the plugin's answers.
    pub async fn connect(config: &DynsecConfig) -> Result<Dynsec, BrokerError> {
        let suffix: u32 = rand::rng().random();
        let mut o =
            MqttOptions::new(format!("{}-jiandu-sync-{suffix:08x}", config.admin_username), &config.host, config.port);
        o.set_credentials(&config.admin_username, &config.admin_password);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut events) = AsyncClient::new(o, 64);
        let (tx, answers) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let (ready_tx, mut ready) = mpsc::channel::<Result<(), String>>(1);
        let stop2 = stop.clone();
        let sub = client.clone();
        tokio::spawn(async move {
            let mut first = Some(ready_tx);
            loop {
                let event = tokio::select! {
                    _ = stop2.cancelled() => break,
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce).await.ok();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = first.take() {
                            r.send(Ok(())).await.ok();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                        match serde_json::from_slice::<Value>(&p.payload) {
                            Ok(v) => {
                                tx.send(v).await.ok();
                            }
                            Err(e) => warn!(error = %e, "dynsec answer is not JSON"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(r) = first.take() {
                            r.send(Err(e.to_string())).await.ok();
                            break;
                        }
                        debug!(error = %e, "dynsec connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(ANSWER_TIMEOUT, ready.recv()).await {
            Ok(Some(Ok(()))) => Ok(Dynsec { client, answers, stop, next: 0 }),
            Ok(Some(Err(reason))) => {
                stop.cancel();
                Err(BrokerError::Dynsec { reason: format!("cannot log in as {}: {reason}", config.admin_username) })
            }
            Ok(None) => {
                stop.cancel();
                Err(BrokerError::Dynsec { reason: "the connection task ended".into() })
            }
            Err(_) => {
                stop.cancel();
                Err(BrokerError::Dynsec { reason: "no answer from the broker within 15 s".into() })
            }
        }
    }

    /// Sends `commands` (in batches) and returns, per command, the plugin's answer object.
    pub async fn send(&mut self, commands: Vec<Value>) -> Result<Vec<Value>, BrokerError> {
        let mut out = Vec::with_capacity(commands.len());
        for chunk in commands.chunks(BATCH) {
            self.next += 1;
            let corr = format!("jd-{:08x}-{}", rand::rng().random::<u32>(), self.next);
            let tagged: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.clone();
                    c["correlationData"] = json!(format!("{corr}-{i}"));
                    c
                })
                .collect();
            let body = serde_json::to_vec(&json!({ "commands": tagged })).expect("JSON serialises");
            self.client
                .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, body)
                .await
                .map_err(|e| BrokerError::Dynsec { reason: e.to_string() })?;
            let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
            loop {
                let answer = tokio::time::timeout_at(deadline, self.answers.recv())
                    .await
                    .map_err(|_| BrokerError::Dynsec { reason: "the dynsec plugin did not answer within 15 s".into() })?
                    .ok_or_else(|| BrokerError::Dynsec { reason: "connection to the broker ended".into() })?;
                let responses = answer["responses"].as_array().cloned().unwrap_or_default();
                let ours = responses.iter().any(|r| {
                    r["correlationData"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&corr) && c[corr.len()..].starts_with('-'))
                });
                if ours {
                    out.extend(responses);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The usernames of every client the plugin knows.
    pub async fn clients(&mut self) -> Result<HashSet<String>, BrokerError> {
        let answer =
            self.send(vec![json!({"command": "listClients", "verbose": false, "count": -1, "offset": 0})]).await?;
        let first = answer.into_iter().next().unwrap_or(Value::Null);
        if let Some(e) = first["error"].as_str() {
            return Err(BrokerError::Dynsec { reason: format!("listClients: {e}") });
        }
        Ok(first["data"]["clients"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|c| c.as_str().or_else(|| c["username"].as_str())).map(str::to_owned).collect()
            })
            .unwrap_or_default())
    }

    /// Ends the connection.
    pub async fn close(self) {
        self.client.disconnect().await.ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.stop.cancel();
    }
}

/// Role name of a login on Mosquitto.
fn role_name(p: &Principal) -> String {
    match p {
        Principal::Device { id } => format!("jd-dev-{id}"),
        Principal::Integration { name, .. } => format!("jd-int-{name}"),
        Principal::Service { name } => format!("jd-svc-{name}"),
    }
}

fn acl(acltype: &str, topic: &str, allow: bool, priority: i64) -> Value {
    json!({"acltype": acltype, "topic": topic, "allow": allow, "priority": priority})
}

/// The role's ACL entries: the embedded front's rules, as far as Mosquitto can say them.
pub fn role_acls(p: &Principal) -> Vec<Value> {
    match p {
        Principal::Device { id } => {
            let mut acls: Vec<Value> = ["hb", "presence", "report", "lookup", "asg/+", "ev/+/meta", "ev/+/c/+"]
                .iter()
                .map(|t| acl("publishClientSend", &format!("jd/v1/dev/{id}/{t}"), true, 0))
                .collect();
            acls.push(acl("publishClientSend", &format!("owntracks/{id}/+"), true, 0));
            acls.push(acl("subscribePattern", &format!("jd/v1/dev/{id}/inbox/#"), true, 0));
            acls.push(acl("subscribePattern", crate::acl::PLATFORM_KEY, true, 0));
            acls
        }
        Principal::Integration { name, subscribe, publish } => {
            // Never as a device, never the broker's own topics, whatever the filters say.
            let mut acls: Vec<Value> = ["jd/v1/dev/#", "owntracks/#", "$CONTROL/#", "$SYS/#"]
                .iter()
                .map(|t| acl("publishClientSend", t, false, 10))
                .collect();
            acls.extend(publish.iter().map(|f| acl("publishClientSend", f, true, 0)));
            let plain_group = !name.contains(['+', '#', '/']) && !jiandu_schemas::topic::is_platform_share_group(name);
            for f in subscribe {
                acls.push(acl("subscribePattern", f, true, 0));
                if plain_group {
                    acls.push(acl("subscribePattern", &format!("$share/{name}/{f}"), true, 0));
                }
            }
            acls
        }
        Principal::Service { .. } => vec![
            acl("publishClientSend", "#", true, 0),
            acl("subscribePattern", "#", true, 0),
            acl("subscribePattern", "$share/#", true, 0),
        ],
    }
}

/// The commands that make `p` a Mosquitto client with `password`: the role with its ACLs in
/// one `createRole`, then the client. Two commands, not one per ACL: the plugin (2.0) rewrites
/// its whole JSON file after every command, so a sync of N phones costs commands × file size,
/// which grows with N (measured: 1,600 phones took ten minutes with one `addRoleACL` each).
fn create_commands(p: &Principal, password: &str) -> Vec<Value> {
    let role = role_name(p);
    let name = crate::acl::principal_name(p);
    vec![
        json!({"command": "createRole", "rolename": role, "textdescription": "managed by jiandu", "acls": role_acls(p)}),
        json!({"command": "createClient", "username": name, "password": password,
            "textdescription": "managed by jiandu", "roles": [{"rolename": role, "priority": 0}]}),
    ]
}

/// Whether an answer is a success, or a harmless "already so".
fn ok_or_already(answer: &Value) -> Result<(), String> {
    match answer["error"].as_str() {
        None | Some("") => Ok(()),
        Some(e) if e.contains("already exists") || e.contains("not found") || e.contains("does not exist") => Ok(()),
        Some(e) => Err(format!("{}: {e}", answer["command"].as_str().unwrap_or("?"))),
    }
}

/// One pass: makes every live login a client, deletes revoked ones; `present` is what the
/// plugin holds (from [`Dynsec::clients`]) and is kept up to date.
pub async fn sync_once(
    store: &Store,
    dynsec: &mut Dynsec,
    service: Option<(&str, &str)>,
    present: &mut HashSet<String>,
) -> Result<SyncReport, BrokerError> {
    let key: Option<&CredentialKey> = store.credential_key();
    let logins = store.mqtt_logins().await?;
    let mut report = SyncReport::default();
    let mut commands = Vec::new();
    let mut created = Vec::new();
    for MqttLogin { principal, token_hash, revoked } in logins {
        let name = crate::acl::principal_name(&principal).to_owned();
        if revoked {
            if present.remove(&name) {
                commands.push(json!({"command": "deleteClient", "username": name}));
                commands.push(json!({"command": "deleteRole", "rolename": role_name(&principal)}));
                report.deleted.push(name);
            }
            continue;
        }
        if present.contains(&name) {
            report.unchanged += 1;
            continue;
        }
        let password = match (&principal, service) {
            (Principal::Service { name: n }, Some((svc, pw))) if n == svc => pw.to_owned(),
            (Principal::Service { .. }, _) => continue,
            _ => {
                let kind = if matches!(principal, Principal::Device { .. }) { "device" } else { "account" };
                match key.map(|k| k.token_for(kind, &name)) {
                    Some(t) if hash_token(t.expose()) == token_hash => t.into_inner(),
                    _ => {
                        report.not_derivable.push(name);
                        continue;
                    }
                }
            }
        };
        commands.extend(create_commands(&principal, &password));
        created.push(name);
    }
    // The roles' service account may not be in the database (it is on an external broker).
    if let Some((svc, pw)) = service
        && !present.contains(svc)
        && !created.iter().any(|c| c == svc)
    {
        commands.extend(create_commands(&Principal::Service { name: svc.to_owned() }, pw));
        created.push(svc.to_owned());
    }
    if commands.is_empty() {
        return Ok(report);
    }
    let answers = dynsec.send(commands).await?;
    let failures: Vec<String> = answers.iter().filter_map(|a| ok_or_already(a).err()).collect();
    if !failures.is_empty() {
        return Err(BrokerError::Dynsec { reason: failures.join("; ") });
    }
    present.extend(created.iter().cloned());
    report.created = created;
    if !report.created.is_empty() || !report.deleted.is_empty() {
        info!(created = report.created.len(), deleted = report.deleted.len(), "Mosquitto dynamic security in step");
    }
    Ok(report)
}

/// Denies publishing and subscribing to every client by default (roles then allow).
pub async fn deny_by_default(dynsec: &mut Dynsec) -> Result<(), BrokerError> {
    let answers = dynsec
        .send(vec![json!({"command": "setDefaultACLAccess", "acls": [
            {"acltype": "publishClientSend", "allow": false},
            {"acltype": "subscribe", "allow": false},
        ]})])
        .await?;
    answers.iter().try_for_each(ok_or_already).map_err(|reason| BrokerError::Dynsec { reason })
}

/// Connects, sets the default access, and syncs once (`jiandu broker sync`).
pub async fn sync(store: &Store, config: &DynsecConfig) -> Result<SyncReport, BrokerError> {
    let mut dynsec = Dynsec::connect(config).await?;
    let result = async {
        deny_by_default(&mut dynsec).await?;
        let mut present = dynsec.clients().await?;
        let service = config.service.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        sync_once(store, &mut dynsec, service, &mut present).await
    }
    .await;
    dynsec.close().await;
    result
}

/// The continuous sync of `serve`: a pass every `interval` (new devices and accounts become
/// clients, revoked ones are deleted within about that time), re-reading the plugin's client
/// list every five minutes in case an operator changed it by hand.
pub async fn run(store: Store, config: DynsecConfig, shutdown: CancellationToken) -> Result<(), BrokerError> {
    let mut dynsec = Dynsec::connect(&config).await?;
    deny_by_default(&mut dynsec).await?;
    let service = config.service.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    let mut present = dynsec.clients().await?;
    let mut listed = tokio::time::Instant::now();
    let result = loop {
        if listed.elapsed() > Duration::from_secs(300) {
            match dynsec.clients().await {
                Ok(p) => present = p,
                Err(e) => break Err(e),
            }
            listed = tokio::time::Instant::now();
        }
        let report = sync_once(&store, &mut dynsec, service, &mut present).await;
        if let Err(e) = report {
            break Err(e);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(config.interval) => {}
        }
    };
    dynsec.close().await;
    result
}
