import 'dart:async';
import 'dart:convert';
import 'package:web_socket_channel/web_socket_channel.dart';

/// Samples from the server, across reconnects. Each has timestamp, active_users,
/// page_views, avg_session_duration and seq.
Stream<Map<String, dynamic>> analytics(String host) async* {
  int? lastSeq;
  var delay = const Duration(seconds: 1);
  while (true) {
    final since = lastSeq == null ? '' : '&since=$lastSeq';
    final channel = WebSocketChannel.connect(Uri.parse('wss://$host/api/analytics?seq=1$since'));
    try {
      await for (final frame in channel.stream) {
        final msg = jsonDecode(frame as String) as Map<String, dynamic>;
        if (msg['type'] == 'welcome') continue;
        delay = const Duration(seconds: 1);
        lastSeq = msg['seq'] as int;
        yield msg;
      }
      // Closed by the server: on a deploy its close reason says when to come back.
      final reason = channel.closeReason;
      final after = reason == null ? null : (jsonDecode(reason)['reconnect_after_ms'] as int?);
      if (after != null) delay = Duration(milliseconds: after);
    } catch (_) {
      // Unreachable: back off, doubling up to 30 s.
    }
    await Future.delayed(delay);
    delay = delay * 2 > const Duration(seconds: 30) ? const Duration(seconds: 30) : delay * 2;
  }
}

// In a widget:
// StreamBuilder<Map<String, dynamic>>(
//   stream: analytics('your-service.onrender.com'),
//   builder: (context, snap) => Text('${snap.data?['active_users'] ?? '–'} active users'),
// )
