"""The brokers scale-out stands on (docs/scale-out.md): a 3-node NATS cluster with JetStream, and
MQTT shared subscriptions spreading one stream over several ``telemetry-cy run`` instances.

Real mosquitto and nats-server on loopback: the cluster's routes carry a message published on
one node to a subscriber on another, a replicated stream survives the loss of a node, and two
daemons in one ``$share`` group each get a part of the messages and together every one of them.
"""

from __future__ import annotations

import asyncio

import nats

from support.brokers import NatsSubscriber, wait_for
from support.daemon import paho_publisher, payload, publish_all, seen_keys


def test_cluster_routes_messages_between_nodes(nats_cluster):
    subs = [NatsSubscriber(url, subject="route.>") for url in nats_cluster.urls]
    try:
        pub = NatsSubscriber(nats_cluster.urls[0], subject=None)
        pub.call(pub.nc.publish("route.x", b"hello"))
        pub.call(pub.nc.flush())
        # every node's subscriber, the two remote ones through the routes
        assert wait_for(lambda: all(len(s.msgs) == 1 for s in subs), 10.0), \
            [len(s.msgs) for s in subs]
        assert {s.msgs[0].data for s in subs} == {b"hello"}
        pub.close()
    finally:
        for s in subs:
            s.close()


def test_replicated_stream_survives_a_node(nats_cluster):
    admin = NatsSubscriber(nats_cluster.urls[1], subject=None)
    try:
        admin.add_stream("R3", subjects=("r3.>",), num_replicas=3)

        async def publish(n):
            js = admin.nc.jetstream()
            for i in range(n):
                await js.publish("r3.x", str(i).encode())
        admin.call(publish(20))
        nats_cluster.nodes[0].kill()   # a node goes: two of three replicas remain, a quorum
        other = NatsSubscriber(nats_cluster.urls[2], subject=None)
        try:
            def readable():
                try:
                    return [m.data for m in other.stream_msgs("R3")]
                except Exception:  # the stream's leader may be moving to a live node
                    return None
            got: list = []
            assert wait_for(lambda: (got.__setitem__(slice(None), readable() or []),
                                     len(got) == 20)[1], 15.0), got
            assert got == [str(i).encode() for i in range(20)]
        finally:
            other.close()
    finally:
        admin.close()


def test_cluster_url_list_connects_past_a_dead_node(nats_cluster):
    nats_cluster.nodes[0].kill()

    async def go():
        nc = await nats.connect(nats_cluster.url.split(","), connect_timeout=1,
                                max_reconnect_attempts=2, dont_randomize=True)
        try:
            return nc.connected_url.port
        finally:
            await nc.close()
    assert asyncio.run(go()) in {n.port for n in nats_cluster.nodes[1:]}


def test_shared_subscription_spreads_over_two_instances(mosquitto, nats_server, spawn):
    topic = "$share/tcy/site/+/sensor/+"
    sub = NatsSubscriber(nats_server.url)
    daemons = [spawn(mosquitto.url, nats_server.url, name=f"inst{i}", topic=topic)
               for i in range(2)]
    for d in daemons:
        d.wait_up()
    pub = paho_publisher(mosquitto, "shared-pub")
    n = 400
    try:
        publish_all(pub, [(f"site/dev{i}/sensor/t", payload(f"dev{i}", value=float(i)))
                          for i in range(n)])
    finally:
        pub.loop_stop()
        pub.disconnect()
    finals = [d.stop()[1] for d in daemons]
    try:
        received = [f["received"] for f in finals]
        # each message reached exactly one member of the group, and both members got some
        assert sum(received) == n and all(received), received
        # and every key came out once, from whichever instance got it
        assert wait_for(lambda: len(seen_keys(sub)) == n, 10.0), len(seen_keys(sub))
        assert set(seen_keys(sub).values()) == {1}
    finally:
        sub.close()
