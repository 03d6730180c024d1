// Package framing is the ICS wire format: a fixed 32-byte header, frames
// decoded in place from a connection's inbound buffer, batches of frames
// written with one writev, and optional payload compression.
//
// It knows nothing of sockets; the engine package drives it.
//
// Encoding a request and decoding it again:
//
//	var b framing.Batch
//	h := framing.Header{Type: framing.TypeRequest, Service: framing.NewServiceID(8, 1), Proc: 3, XID: 42}
//	b.Append(&h, []byte("args"))
//	_, _ = b.WriteTo(conn)
//
//	d := framing.Decoder{MaxPayload: 1 << 20}
//	for {
//		f, n, err := d.Next(buf)
//		if err != nil { /* corrupt stream: close the connection */ }
//		if n == 0 { break } // need more bytes
//		handle(f.Header, f.Payload) // f.Payload aliases buf
//		buf = buf[n:]
//	}
//
// Every length read from the network is checked against the decoder's
// MaxPayload before anything is allocated for it, and a compressed payload
// is never decoded past the size its header announced.
package framing
