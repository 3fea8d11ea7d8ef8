package com.gradserve.client;

import com.gradserve.v1.EvaluateRequest;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.MethodDescriptor;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/** A client interceptor that keeps every EvaluateRequest sent: what went over the wire. */
final class Recorder implements ClientInterceptor {
  final List<EvaluateRequest> sent = new CopyOnWriteArrayList<>();

  @Override
  public <Q, A> ClientCall<Q, A> interceptCall(
      MethodDescriptor<Q, A> method, CallOptions options, Channel next) {
    return new ForwardingClientCall.SimpleForwardingClientCall<>(next.newCall(method, options)) {
      @Override
      public void sendMessage(Q message) {
        if (message instanceof EvaluateRequest request) {
          sent.add(request);
        }
        super.sendMessage(message);
      }
    };
  }
}
