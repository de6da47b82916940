//! The classic BPF program the kernel runs on every packet before waking us.
//!
//! It runs on an `AF_PACKET`/`SOCK_DGRAM` socket, so offsets start at the
//! network header whatever the link type (Ethernet, loopback, tun). It passes
//! only unfragmented UDP to the knock port whose UDP length is plausible for
//! a knock, over IPv4 or IPv6, in frames addressed to this host; everything
//! else is dropped in the kernel and never costs us a wake-up or a copy.
//!
//! "Addressed to this host" is the kernel's packet type `PACKET_HOST`: a
//! unicast frame to one of our link addresses (or any frame on loopback, a
//! tunnel, a device without link addresses). Frames for other hosts on the
//! segment (`PACKET_OTHERHOST`: a bridge floods them, a promiscuous NIC or a
//! macvlan's lower device passes them up), broadcasts and multicasts (knocks
//! are unicast) and our own transmissions are dropped: the kernel's IP stack
//! would not receive them either.
//!
//! IPv6 packets with extension headers (including fragments) are dropped:
//! a knock never needs them.

use knock_proto::{MAX_KNOCK_LEN, MIN_KNOCK_LEN};

/// One classic BPF instruction, as `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcode parts (linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const JEQ: u16 = 0x10;
const JGT: u16 = 0x20;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;

/// Ancillary data offsets (SKF_AD_OFF + ...).
const AD_PROTOCOL: u32 = 0xffff_f000;
const AD_PKTTYPE: u32 = 0xffff_f004;
/// `sll_pkttype` values (linux/if_packet.h).
const PACKET_HOST: u32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_UDP: u32 = 17;
const UDP_HEADER: u32 = 8;

/// Builds the filter for knocks to `knock_port`.
pub fn knock_filter(knock_port: u16) -> Vec<Instruction> {
    let port = u32::from(knock_port);
    let min = MIN_KNOCK_LEN as u32 + UDP_HEADER;
    let max = MAX_KNOCK_LEN as u32 + UDP_HEADER;
    let mut a = Assembler::default();
    a.op(LD | W | ABS, AD_PKTTYPE);
    a.jump(JEQ, PACKET_HOST, "next", "drop");
    a.op(LD | W | ABS, AD_PROTOCOL);
    a.jump(JEQ, ETH_P_IP, "v4", "next");
    a.jump(JEQ, ETH_P_IPV6, "v6", "drop");

    a.label("v4");
    a.op(LD | B | ABS, 9); // protocol
    a.jump(JEQ, IPPROTO_UDP, "next", "drop");
    a.op(LD | H | ABS, 6); // flags and fragment offset
    a.jump(JSET, 0x3fff, "drop", "next"); // MF set or offset != 0: a fragment
    a.op(LDX | B | MSH, 0); // X = IPv4 header length
    a.op(LD | H | IND, 2); // UDP destination port
    a.jump(JEQ, port, "next", "drop");
    a.op(LD | H | IND, 4); // UDP length
    a.jump(JGE, min, "next", "drop");
    a.jump(JGT, max, "drop", "accept");

    a.label("v6");
    a.op(LD | B | ABS, 6); // next header: UDP only, no extension headers
    a.jump(JEQ, IPPROTO_UDP, "next", "drop");
    a.op(LD | H | ABS, 40 + 2);
    a.jump(JEQ, port, "next", "drop");
    a.op(LD | H | ABS, 40 + 4);
    a.jump(JGE, min, "next", "drop");
    a.jump(JGT, max, "drop", "accept");

    a.label("accept");
    a.op(RET | K, 0xffff);
    a.label("drop");
    a.op(RET | K, 0);
    a.finish()
}

/// A tiny assembler: jumps name labels, resolved to relative offsets.
#[derive(Default)]
struct Assembler {
    code: Vec<(Instruction, Option<(&'static str, &'static str)>)>,
    labels: Vec<(&'static str, usize)>,
}

impl Assembler {
    fn op(&mut self, code: u16, k: u32) {
        self.code.push((
            Instruction {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            None,
        ));
    }

    fn jump(&mut self, cond: u16, k: u32, jt: &'static str, jf: &'static str) {
        self.code.push((
            Instruction {
                code: JMP | cond | K,
                jt: 0,
                jf: 0,
                k,
            },
            Some((jt, jf)),
        ));
    }

    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }

    /// Resolves the labels into relative jump offsets.
    ///
    /// The program is fixed, so a jump to a label it does not define, a jump
    /// backwards or one too far for the 8-bit offset is a bug in it. Each
    /// panics here, at the first `knock_filter` call (the unit tests make
    /// one), rather than becoming a jump somewhere else: a filter that jumps
    /// to the wrong place could accept what it must drop.
    fn finish(self) -> Vec<Instruction> {
        let target = |name: &str, at: usize| -> u8 {
            let to = if name == "next" {
                at + 1
            } else {
                self.labels
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, i)| *i)
                    .expect("every jump names a label the program defines")
            };
            let offset = to
                .checked_sub(at + 1)
                .expect("classic BPF jumps only forward");
            u8::try_from(offset).expect("a jump skips at most 255 instructions")
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, (ins, jumps))| match jumps {
                None => *ins,
                Some((jt, jf)) => Instruction {
                    jt: target(jt, at),
                    jf: target(jf, at),
                    ..*ins
                },
            })
            .collect()
    }
}

/// `tcpdump -d`-like listing, for `knock-server check`.
pub fn describe(program: &[Instruction]) -> String {
    program
        .iter()
        .enumerate()
        .map(|(i, ins)| {
            format!(
                "({i:03}) code=0x{:02x} jt={} jf={} k=0x{:x}\n",
                ins.code, ins.jt, ins.jf, ins.k
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! A classic BPF interpreter, enough of it to run our program on crafted
    //! packets.
    use super::*;

    const PACKET_BROADCAST: u32 = 1;
    const PACKET_MULTICAST: u32 = 2;
    const PACKET_OTHERHOST: u32 = 3;
    const PACKET_OUTGOING: u32 = 4;

    struct Meta {
        protocol: u32,
        pkttype: u32,
    }

    fn run(program: &[Instruction], packet: &[u8], meta: &Meta) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |offset: u32, size: u16| -> Option<u32> {
            match offset {
                AD_PROTOCOL => return Some(meta.protocol),
                AD_PKTTYPE => return Some(meta.pkttype),
                _ => {}
            }
            let o = offset as usize;
            Some(match size {
                W => u32::from_be_bytes(packet.get(o..o + 4)?.try_into().ok()?),
                H => u32::from(u16::from_be_bytes(packet.get(o..o + 2)?.try_into().ok()?)),
                _ => u32::from(*packet.get(o)?),
            })
        };
        loop {
            let ins = program[pc];
            let class = ins.code & 0x07;
            match class {
                0x00 => {
                    let size = ins.code & 0x18;
                    let offset = if ins.code & 0xe0 == IND {
                        x.wrapping_add(ins.k)
                    } else {
                        ins.k
                    };
                    match load(offset, size) {
                        Some(v) => a = v,
                        None => return 0,
                    }
                }
                0x01 => match packet.get(ins.k as usize) {
                    Some(b) => x = u32::from(b & 0x0f) * 4,
                    None => return 0,
                },
                0x05 => {
                    let taken = match ins.code & 0xf0 {
                        JEQ => a == ins.k,
                        JGT => a > ins.k,
                        JGE => a >= ins.k,
                        JSET => a & ins.k != 0,
                        other => panic!("jump {other:x}"),
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                0x06 => return ins.k,
                other => panic!("class {other}"),
            }
            pc += 1;
        }
    }

    fn v4(port: u16, payload: usize, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + payload];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = 17;
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p
    }

    fn v6(port: u16, payload: usize, next: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 8 + payload];
        p[0] = 0x60;
        p[6] = next;
        p[42..44].copy_from_slice(&port.to_be_bytes());
        p[44..46].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        p
    }

    const IN4: Meta = Meta {
        protocol: ETH_P_IP,
        pkttype: PACKET_HOST,
    };
    const IN6: Meta = Meta {
        protocol: ETH_P_IPV6,
        pkttype: PACKET_HOST,
    };

    #[test]
    fn assembler_resolves_labels_to_relative_offsets() {
        let mut a = Assembler::default();
        a.jump(JEQ, 1, "next", "end");
        a.op(LD | B | ABS, 0);
        a.label("end");
        a.op(RET | K, 0);
        let prog = a.finish();
        assert_eq!((prog[0].jt, prog[0].jf), (0, 1));
    }

    #[test]
    #[should_panic(expected = "every jump names a label the program defines")]
    fn assembler_refuses_an_unknown_label() {
        let mut a = Assembler::default();
        a.jump(JEQ, 1, "next", "nowhere");
        a.op(RET | K, 0);
        a.finish();
    }

    #[test]
    #[should_panic(expected = "classic BPF jumps only forward")]
    fn assembler_refuses_a_backward_jump() {
        let mut a = Assembler::default();
        a.label("top");
        a.op(LD | B | ABS, 0);
        a.jump(JEQ, 1, "top", "next");
        a.op(RET | K, 0);
        a.finish();
    }

    #[test]
    #[should_panic(expected = "a jump skips at most 255 instructions")]
    fn assembler_refuses_a_jump_too_far() {
        let mut a = Assembler::default();
        a.jump(JEQ, 1, "next", "far");
        for _ in 0..256 {
            a.op(LD | B | ABS, 0);
        }
        a.label("far");
        a.op(RET | K, 0);
        a.finish();
    }

    #[test]
    fn assembler_reaches_255_instructions_ahead() {
        let mut a = Assembler::default();
        a.jump(JEQ, 1, "next", "far");
        for _ in 0..255 {
            a.op(LD | B | ABS, 0);
        }
        a.label("far");
        a.op(RET | K, 0);
        assert_eq!(a.finish()[0].jf, 255);
    }

    /// Protocol v2: every knock is 191..=254 bytes, in either mode, so UDP
    /// lengths 199..=262 pass, and the filter names them.
    #[test]
    fn the_lengths_are_protocol_v2s() {
        assert_eq!((MIN_KNOCK_LEN, MAX_KNOCK_LEN), (191, 254));
        let text = describe(&knock_filter(62201));
        assert!(
            text.contains("k=0xc7") && text.contains("k=0x106"),
            "{text}"
        );
        let prog = knock_filter(62201);
        for len in [190, 255] {
            assert_eq!(run(&prog, &v4(62201, len, 0), &IN4), 0, "{len}");
        }
        for len in [191, 222, 254] {
            assert_ne!(run(&prog, &v4(62201, len, 0), &IN4), 0, "{len}");
        }
    }

    #[test]
    fn passes_plausible_knocks_only() {
        let prog = knock_filter(62201);
        let ok = MIN_KNOCK_LEN + 10;
        assert_ne!(
            run(&prog, &v4(62201, ok, 0x4000), &IN4),
            0,
            "DF set is fine"
        );
        assert_ne!(run(&prog, &v4(62201, MIN_KNOCK_LEN, 0), &IN4), 0);
        assert_ne!(run(&prog, &v4(62201, MAX_KNOCK_LEN, 0), &IN4), 0);
        assert_ne!(run(&prog, &v6(62201, ok, 17), &IN6), 0);
        let mut options = v4(62201, ok, 0);
        options[0] = 0x46;
        options.splice(20..20, [1u8, 1, 1, 1]);
        assert_ne!(
            run(&prog, &options, &IN4),
            0,
            "IPv4 options shift the UDP header"
        );
    }

    #[test]
    fn drops_everything_else() {
        let prog = knock_filter(62201);
        let ok = MIN_KNOCK_LEN + 10;
        assert_eq!(run(&prog, &v4(62202, ok, 0), &IN4), 0, "other port");
        assert_eq!(
            run(&prog, &v4(62201, MIN_KNOCK_LEN - 1, 0), &IN4),
            0,
            "too short"
        );
        assert_eq!(
            run(&prog, &v4(62201, MAX_KNOCK_LEN + 1, 0), &IN4),
            0,
            "too long"
        );
        assert_eq!(
            run(&prog, &v4(62201, ok, 0x2000), &IN4),
            0,
            "first fragment"
        );
        assert_eq!(
            run(&prog, &v4(62201, ok, 0x0010), &IN4),
            0,
            "later fragment"
        );
        let mut tcp = v4(62201, ok, 0);
        tcp[9] = 6;
        assert_eq!(run(&prog, &tcp, &IN4), 0, "tcp");
        assert_eq!(
            run(&prog, &v6(62201, ok, 44), &IN6),
            0,
            "v6 fragment header"
        );
        assert_eq!(run(&prog, &v6(62202, ok, 17), &IN6), 0, "v6 other port");
        for (pkttype, what) in [
            (PACKET_OUTGOING, "our own output"),
            (PACKET_OTHERHOST, "a frame for another host"),
            (PACKET_BROADCAST, "a broadcast"),
            (PACKET_MULTICAST, "a multicast"),
        ] {
            let meta = Meta {
                protocol: ETH_P_IP,
                pkttype,
            };
            assert_eq!(run(&prog, &v4(62201, ok, 0), &meta), 0, "v4: {what}");
            let meta = Meta {
                protocol: ETH_P_IPV6,
                pkttype,
            };
            assert_eq!(run(&prog, &v6(62201, ok, 17), &meta), 0, "v6: {what}");
        }
        let arp = Meta {
            protocol: 0x0806,
            pkttype: 0,
        };
        assert_eq!(run(&prog, &v4(62201, ok, 0), &arp), 0, "not IP");
        assert_eq!(run(&prog, &[0x45], &IN4), 0, "runt");
    }
}
