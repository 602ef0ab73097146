//! What the backend's mail transaction holds, as far as the relay can
//! tell while commands are pipelined ahead of their replies — enough for
//! TLS policy (DESIGN.md §9) to know the sender a RCPT belongs to, and to
//! keep the commands that follow a refused MAIL or RCPT from the backend.
//!
//! No I/O: the relay reports what it sent, refused itself, and what the
//! backend answered to each MAIL.

use super::reply::{self, Reply};

/// The transaction of one relayed session.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Identifies each MAIL sent, to match its reply.
    next_mail: u64,
    /// Senders of the MAILs sent to the backend since the last reset whose
    /// reply is not known to be negative: the backend's transaction has one
    /// of these (a nested MAIL is refused by the backend, and a refused
    /// MAIL opens nothing). `None`: the null sender `<>`.
    senders: Vec<(u64, Option<String>)>,
    /// The last MAIL was refused by the proxy itself: until the next MAIL,
    /// RSET, HELO/EHLO, the client is in no transaction.
    mail_refused: bool,
    /// RCPTs sent to the backend since the last reset.
    rcpts_sent: u32,
    /// RCPTs the proxy refused itself since the last reset.
    rcpts_refused: u32,
}

/// A command of the transaction that may have to be answered locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Rcpt,
    /// DATA, or a BDAT chunk.
    Data,
}

impl Transaction {
    /// RSET, HELO/EHLO, or the end of a message sent: a new transaction.
    pub fn reset(&mut self) {
        self.senders.clear();
        self.mail_refused = false;
        self.rcpts_sent = 0;
        self.rcpts_refused = 0;
    }

    /// The proxy answered MAIL itself (it never reached the backend).
    pub fn mail_refused(&mut self) {
        self.mail_refused = true;
    }

    /// A MAIL went to the backend; the id is for [`Transaction::mail_reply`].
    pub fn mail_sent(&mut self, sender: Option<String>) -> u64 {
        self.mail_refused = false;
        self.next_mail += 1;
        self.senders.push((self.next_mail, sender));
        self.next_mail
    }

    /// The backend answered the MAIL `id`. Replies come in order: a
    /// positive one replaces every earlier sender (those were refused, or
    /// a backend that takes a nested MAIL replaced them); a negative one
    /// removes its own.
    pub fn mail_reply(&mut self, id: u64, positive: bool) {
        if positive {
            self.senders.retain(|(i, _)| *i >= id);
        } else {
            self.senders.retain(|(i, _)| *i != id);
        }
    }

    pub fn rcpt_sent(&mut self) {
        self.rcpts_sent = self.rcpts_sent.saturating_add(1);
    }

    pub fn rcpt_refused(&mut self) {
        self.rcpts_refused = self.rcpts_refused.saturating_add(1);
    }

    /// The senders the backend's transaction may have (usually one).
    pub fn senders(&self) -> impl Iterator<Item = Option<&str>> {
        self.senders.iter().map(|(_, s)| s.as_deref())
    }

    /// The reply the proxy gives itself instead of sending `step` to the
    /// backend: after a refused MAIL, RCPT is `503 need MAIL` and DATA
    /// `503 need RCPT`; when the proxy refused every recipient and sent
    /// none, DATA is `554 no valid recipients` (what Postfix answers).
    pub fn local_reply(&self, step: Step) -> Option<Reply> {
        match step {
            Step::Rcpt if self.mail_refused => Some(reply::NEED_MAIL),
            Step::Rcpt => None,
            Step::Data if self.mail_refused => Some(reply::NEED_RCPT),
            Step::Data if self.rcpts_sent == 0 && self.rcpts_refused > 0 => {
                Some(reply::NO_VALID_RECIPIENTS)
            }
            Step::Data => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders(t: &Transaction) -> Vec<Option<&str>> {
        t.senders().collect()
    }

    #[test]
    fn a_refused_mail_keeps_rcpt_and_data_local_until_the_next_mail() {
        let mut t = Transaction::default();
        assert_eq!(t.local_reply(Step::Rcpt), None);
        assert_eq!(t.local_reply(Step::Data), None);
        t.mail_refused();
        assert_eq!(t.local_reply(Step::Rcpt), Some(reply::NEED_MAIL));
        assert_eq!(t.local_reply(Step::Data), Some(reply::NEED_RCPT));
        t.mail_sent(Some("a.test".into()));
        assert_eq!(t.local_reply(Step::Rcpt), None);
        t.mail_refused();
        t.reset();
        assert_eq!(t.local_reply(Step::Rcpt), None);
    }

    #[test]
    fn data_is_local_only_when_every_recipient_was_refused_here() {
        let mut t = Transaction::default();
        t.mail_sent(None);
        t.rcpt_refused();
        assert_eq!(t.local_reply(Step::Data), Some(reply::NO_VALID_RECIPIENTS));
        t.rcpt_sent();
        assert_eq!(t.local_reply(Step::Data), None, "the backend decides");
        t.reset();
        t.mail_sent(None);
        assert_eq!(
            t.local_reply(Step::Data),
            None,
            "no RCPT at all: the backend's 503"
        );
    }

    #[test]
    fn the_sender_follows_the_backend_replies() {
        let mut t = Transaction::default();
        let a = t.mail_sent(Some("a.test".into()));
        let b = t.mail_sent(Some("b.test".into()));
        // Pipelined: both may be the backend's until their replies come.
        assert_eq!(senders(&t), [Some("a.test"), Some("b.test")]);
        // a accepted: b is a nested MAIL the backend will refuse.
        t.mail_reply(a, true);
        assert_eq!(senders(&t), [Some("a.test"), Some("b.test")]);
        t.mail_reply(b, false);
        assert_eq!(senders(&t), [Some("a.test")]);
        // A refused MAIL does not end the backend's transaction.
        t.mail_refused();
        assert_eq!(senders(&t), [Some("a.test")]);
        t.reset();
        assert!(senders(&t).is_empty());
        // First refused by the backend, the second accepted: only it.
        let c = t.mail_sent(Some("c.test".into()));
        let d = t.mail_sent(None);
        t.mail_reply(c, false);
        t.mail_reply(d, true);
        assert_eq!(senders(&t), [None]);
    }
}
