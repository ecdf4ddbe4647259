//! Carrying out a driver's effects, in order, as `chain/producer.rs` does: a
//! `Persist` or a `Commit` is in the store before the next effect runs; a
//! crash between two effects loses the rest. A Byzantine slot's consensus
//! messages go through the adversary on their way out.

use super::super::adversary::Send;
use super::*;

impl World {
    /// Every effect node `s`'s driver has for us, until it has none or the
    /// node died carrying one out.
    pub(super) fn carry_out(&mut self, s: usize) {
        loop {
            if !self.nodes[s].up || self.checker.violation.is_some() {
                return;
            }
            let Some(effect) = self.nodes[s].driver.as_mut().and_then(|d| d.poll_effect()) else { return };
            self.effect(s, effect);
        }
    }

    fn effect(&mut self, s: usize, effect: Effect) {
        match effect {
            Effect::Persist { record, message, lock } => self.persist(s, record, message, lock.as_deref()),
            Effect::Commit { committed, membership, synced } => self.commit(s, committed, *membership, synced),
            Effect::Broadcast(msg) => {
                if self.nodes[s].honest || !is_consensus(&msg) {
                    self.broadcast(s, &msg);
                } else {
                    let peers = self.peers_of(s);
                    self.byzantine_out(s, msg, &peers);
                }
            }
            Effect::Send { to, msg } => {
                if self.nodes[s].honest || !is_consensus(&msg) {
                    self.send_to_id(s, to, &msg);
                } else {
                    let peers: Vec<usize> = self.peers_of(s).into_iter().filter(|p| self.nodes[*p].id == to).collect();
                    self.byzantine_out(s, msg, &peers);
                }
            }
            Effect::RequestBlocks { peer, from, count } => {
                let pending = Pending::Blocks { peer, slot: usize::MAX };
                self.request(s, peer, Message::GetBlocks { from, count }, pending);
            }
            Effect::RequestTxs { peer, height, round, ids } => {
                self.check_fetch_window(s, height, round);
                // A new fetch of the same proposal replaces the one under way.
                if let Some(old) = self.nodes[s].fetches.remove(&(height, round)) {
                    self.nodes[s].pending.remove(&old);
                }
                let pending = Pending::Txs { peer, slot: usize::MAX, height, round };
                let req = self.request(s, peer, Message::GetTxs { height, round, ids }, pending);
                self.nodes[s].fetches.insert((height, round), req);
            }
            Effect::CancelTxs { height, round } => {
                if let Some(req) = self.nodes[s].fetches.remove(&(height, round)) {
                    self.nodes[s].pending.remove(&req);
                }
            }
            Effect::ServeBlocks { id, peer, from, count, max_bytes, after_ms } => {
                let budget = max_bytes.min(masternode::chain::BLOCKS_LIMIT);
                let mut blocks = self.nodes[s].store.range(from, count, budget);
                // Paced by the peer's serve budget, as the shell waits.
                let mut late = after_ms;
                if !self.nodes[s].honest {
                    let me = self.nodes[s].identity.clone();
                    if let Some(lie) = self.adv.sync_reply(&me, from, &self.nodes[s].store.chain) {
                        blocks = lie;
                    } else if let Some(delay) = self.adv.drip() {
                        blocks.truncate(1);
                        late += delay;
                    }
                }
                let used = masternode::codec::encoded_len(&blocks);
                let now = self.clock(s);
                if let Some(d) = self.nodes[s].driver.as_mut() {
                    d.handle_served(peer, max_bytes, used, now);
                }
                self.answer(s, id, Ok(Message::Blocks(blocks)), late);
            }
            // From the store (`checkpoint_at`), paced as the shell waits; what
            // the answer did not use goes back to the peer's serve budget.
            Effect::ServeCheckpoint { id, peer, height, max_bytes, after_ms } => {
                let reply = self.checkpoint_reply(s, height);
                let used = match &reply {
                    Some(Ok(msg)) => body_of(msg).map_or(0, |b| b.len()),
                    _ => 0,
                };
                let now = self.clock(s);
                if let Some(d) = self.nodes[s].driver.as_mut() {
                    d.handle_served(peer, max_bytes, used, now);
                }
                match reply {
                    Some(result) => self.answer(s, id, result, after_ms),
                    // Never answered: the requester's transport times out.
                    None => {
                        self.nodes[s].serving.remove(&id.0);
                    }
                }
            }
            Effect::Reply { id, msg: Message::Txs(txs) } if !self.nodes[s].honest => match self.adv.txs_answer(txs) {
                Some(txs) => self.answer(s, id, Ok(Message::Txs(txs)), 0),
                // Never answered: the requester's transport times out.
                None => {
                    self.nodes[s].serving.remove(&id.0);
                }
            },
            Effect::Reply { id, msg } => self.answer(s, id, Ok(msg), 0),
            Effect::Refuse { id, refusal } => self.answer(s, id, Err(refusal), 0),
            Effect::SetMembers(members) => {
                self.log(1 << s, None, false, |w| format!("{} reaches {} members", w.name(s), members.len()));
                // The transport admits these keys from now on: connections to
                // others close, new ones may open.
                let admitted: BTreeSet<NodeId> = members.iter().map(|(id, _)| *id).collect();
                self.served.forget(s, &admitted);
                self.nodes[s].admits = Some(admitted);
                self.relink = true;
            }
            Effect::PublishMembers(_) => {}
            Effect::Doppelganger(evidence) => {
                // Every node has a key of its own and the watch is off: a
                // driver that stops on a second signer here is wrong.
                let id = self.nodes[s].id;
                self.nodes[s].halted = true;
                self.checker.validity_failed(
                    id,
                    evidence.seen.height,
                    format!("stopped on a second signer: {evidence:?}"),
                );
            }
            Effect::Halt { plan, max_version } => {
                self.log(1 << s, None, true, |w| {
                    format!(
                        "{} stops before height {}: protocol {} there, it runs up to {max_version}",
                        w.name(s),
                        plan.height,
                        plan.version
                    )
                });
                self.nodes[s].halted = true;
                if self.nodes[s].honest {
                    let id = self.nodes[s].id;
                    let detail =
                        format!("stopped before a plan for protocol {} no honest member approved", plan.version);
                    self.checker.validity_failed(id, plan.height, detail);
                }
                self.crash(s);
            }
        }
    }

    fn persist(&mut self, s: usize, record: SignRecord, message: Signed, lock: Option<&Lock>) {
        self.nodes[s].store.record_signed(record, &message, lock);
        self.log(1 << s, Some(record.height), true, |w| {
            let lock =
                lock.map_or(String::new(), |l| format!(", lock (round {}, {})", l.round, l.block.hash().short()));
            format!("{} signs {}{lock}", w.name(s), describe(&message))
        });
        if self.nodes[s].honest {
            self.checker.on_sign(&message, lock);
            if let Some(l) = lock {
                self.maybe_rewind(s, l);
            }
        } else {
            self.checker.observe(&message);
        }
        self.adv.record(&message);
        if self.nodes[s].crash_after_persist {
            self.crash(s);
        }
    }

    fn commit(&mut self, s: usize, c: Committed, membership: MembershipState, synced: bool) {
        let node = &self.nodes[s];
        let prev = node.store.chain.last().map_or((0, genesis_hash(&NET), GENESIS_MS), |p| {
            (p.block.height(), p.block.hash(), p.block.header.timestamp_ms)
        });
        let h = c.block.height();
        let chain_completed = if node.honest {
            let id = node.id;
            let now = self.now;
            self.checker.on_commit(id, &c, prev, &membership, now)
        } else {
            Vec::new()
        };
        self.log(1 << s, Some(h), true, |w| {
            let how = if synced { " by sync" } else { "" };
            let changes = match c.block.header.changes.len() {
                0 => String::new(),
                k => format!(", {k} approvals"),
            };
            // And the approvals it holds that no block carries yet.
            let pool = w.driver(s).map_or(0, |d| d.held(masternode::chain::Held::Approvals).items);
            let changes = if pool > 0 { format!("{changes}, {pool} waiting") } else { changes };
            format!(
                "{} commits height {h} {} (round {}){how}{changes}",
                w.name(s),
                c.block.hash().short(),
                c.cert.round
            )
        });
        if let Err(e) = self.nodes[s].store.commit(&c, &membership) {
            let id = self.nodes[s].id;
            self.checker.validity_failed(id, h, format!("its driver committed out of order: {e}"));
            return;
        }
        self.check_first_block(s);
        self.on_chain_completed(&chain_completed);
        self.maybe_approve(s);
        self.check_finished();
    }

    /// A consensus message a Byzantine slot's driver sends to `peers`: what
    /// the adversary makes of it.
    fn byzantine_out(&mut self, s: usize, msg: Message, peers: &[usize]) {
        let me = self.nodes[s].identity.clone();
        let signed = match msg {
            Message::Vote(v) => Signed::Vote(v),
            Message::Proposal(p) => Signed::Proposal(p),
            Message::CompactProposal(cp) => {
                // The full proposal it persisted just before.
                let record = SignRecord { height: cp.height, round: cp.round, step: Step::Propose };
                match self.nodes[s].store.own.get(&record) {
                    Some(m @ Signed::Proposal(_)) => m.clone(),
                    _ => return,
                }
            }
            _ => return,
        };
        if let Signed::Proposal(p) = &signed {
            let (h, r) = (p.proposal.height, p.proposal.round);
            if let Some(messages) = self.adv.rework_proposal(&me, p) {
                self.log(1 << s, Some(h), true, |w| {
                    let what: Vec<String> = messages.iter().map(describe_message).collect();
                    format!("{} proposes instead: {}", w.name(s), what.join(", "))
                });
                let sends: Vec<Send> = messages
                    .into_iter()
                    .flat_map(|m| peers.iter().map(move |&to| (to, m.clone())))
                    .map(|(to, msg)| Send { to, msg, extra_delay: 0, genuine: true })
                    .collect();
                return self.exec(s, sends);
            }
            if let Some(messages) = self.adv.need_value(&me, h, r) {
                self.log(1 << s, Some(h), true, |w| format!("{} re-proposes: {}", w.name(s), describe(&messages[0])));
                let sends: Vec<Send> = messages
                    .into_iter()
                    .flat_map(|m| peers.iter().map(move |&to| (to, m.clone())))
                    .map(|(to, m)| Send { to, msg: full(m), extra_delay: 0, genuine: true })
                    .collect();
                return self.exec(s, sends);
            }
            if let Some(bad) = self.bad_proposal(s, p) {
                let sends = peers.iter().map(|&to| Send { to, msg: full(bad.clone()), extra_delay: 0, genuine: true });
                let sends: Vec<Send> = sends.collect();
                return self.exec(s, sends);
            }
        }
        let sends = self.adv.own_sign(&me, signed, peers);
        self.exec(s, sends);
    }

    /// With `BadChanges`, now and then: the proposal `p` of Byzantine slot `s`
    /// with an invalid approval among its block's, signed again.
    fn bad_proposal(&mut self, s: usize, p: &SignedProposal) -> Option<Signed> {
        let d = self.driver(s)?;
        let membership = d.core().membership().clone();
        let me = self.nodes[s].identity.clone();
        let valid = &p.proposal.block.header.changes;
        let (bad, at) = self.adv.bad_changes(&me, &membership, valid)?;
        let why = self.trace.is_some().then(|| membership.validate(&bad, &NET).err()).flatten();
        let forged = bad[at].approval.clone();
        let h = p.proposal.height;
        self.log(1 << s, Some(h), true, |w| {
            let why = why.map_or("valid after all".into(), |(i, e)| format!("#{i} refused: {e}"));
            let by = (w.checker.label)(&forged.approver);
            format!(
                "{} proposes {} approvals with #{at} invalid: {} by {by} signed at {} ({why})",
                w.name(s),
                bad.len(),
                w.change_text(&forged.change),
                forged.signed_at
            )
        });
        let mut block = p.proposal.block.clone();
        block.header.changes = bad;
        Some(Signed::Proposal(propose(block, p.proposal.round, p.proposal.valid_round, &me)))
    }
}

impl World {
    /// A fetch is only for this round or the next, or the next height's first
    /// two (README, "Hardening"): never ahead of that window, which only
    /// moves forward (so a fetch of an earlier slot may have been in it when
    /// it was asked for); besides, the round of a wanted lock
    /// (`Driver::lock_wanted`), whose proposal a restarted node waits for.
    fn check_fetch_window(&mut self, s: usize, height: Height, round: Round) {
        let Some((h, r)) = self.nodes[s].at else { return };
        let ahead = (height == h && round > r + 1) || (height == h + 1 && round > 1) || height > h + 1;
        let wanted = self.driver(s).and_then(|d| d.lock_wanted()) == Some((height, round));
        if ahead && !wanted {
            let id = self.nodes[s].id;
            let detail = format!(
                "fetches the transactions of a proposal of ({height}, {round}) at ({h}, {r}): past its fetch window"
            );
            self.checker.resources_failed(id, detail);
        }
    }
}

fn is_consensus(m: &Message) -> bool {
    matches!(m, Message::Vote(_) | Message::Proposal(_) | Message::CompactProposal(_))
}

/// A signed message in full: a proposal with its transactions, which the
/// proposer's own driver may not hold to answer a fetch with.
fn full(m: Signed) -> Message {
    match m {
        Signed::Proposal(p) => Message::Proposal(p),
        Signed::Vote(v) => Message::Vote(v),
    }
}
