"""The test internet of bench/egress.sh, on this machine's loopback only: a DNS server on
127.77.200.53:53 answering every name under .test with 127.77.200.10, and a TCP server on
127.77.200.10:443 speaking a one-line protocol (after an optional fake TLS record header
line): `BULK N` sends N bytes and closes; `PING` answers `PONG`; `HOLD` keeps the
connection open, idle, until the client closes it."""
import asyncio
import socket
import struct

ADDR = "127.77.200.10"
DNS = "127.77.200.53"
CHUNK = b"\0" * (1 << 20)


class Dns(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1 : i + 1 + data[i]])
            i += 1 + data[i]
        question = data[12 : i + 5]
        qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
        name = b".".join(labels).lower()
        ok = name.endswith(b".test") and qtype == 1
        head = struct.pack("!HHHHHH", qid, 0x8180 if ok else 0x8183, 1, 1 if ok else 0, 0, 0)
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04" + socket.inet_aton(ADDR) if ok else b""
        self.t.sendto(head + question + answer, addr)


async def serve(reader, writer):
    try:
        first = await reader.readexactly(1)
        if first == b"\x16":  # a ClientHello record naming the host, then a newline: skip it
            header = await reader.readexactly(4)
            await reader.readexactly(struct.unpack("!H", header[2:])[0] + 1)
            line = await reader.readline()
        else:
            line = first + await reader.readline()
        if line.startswith(b"BULK"):
            n = int(line.split()[1])
            while n > 0:
                piece = CHUNK[: min(n, len(CHUNK))]
                writer.write(piece)
                await writer.drain()
                n -= len(piece)
        elif line.startswith(b"PING"):
            writer.write(b"PONG\n")
            await writer.drain()
        elif line.startswith(b"HOLD"):
            await reader.read()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Dns, local_addr=(DNS, 53))
    server = await asyncio.start_server(serve, ADDR, 443, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
